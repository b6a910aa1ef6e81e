// Not a function

#[multiloop::task]
struct NotAFunction;

fn main() {}
