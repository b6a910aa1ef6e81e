// An argument that is not a serde type

struct NotSerde;

#[multiloop::task]
async fn consume(value: NotSerde) {
    let _ = value;
}

fn main() {}
