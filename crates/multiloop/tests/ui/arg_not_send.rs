// An argument that is not `Send`
// The error names `Rc<u64>`: it cannot be sent between threads safely or, when
// serde's `rc` feature is off, it is not `Serialize` either.

use std::rc::Rc;

#[multiloop::task]
async fn shared(value: Rc<u64>) -> u64 {
    *value
}

fn main() {}
