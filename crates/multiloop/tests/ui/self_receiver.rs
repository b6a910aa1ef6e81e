// A method (`self` receiver)

struct Counter;

impl Counter {
    #[multiloop::task]
    async fn next(&self) -> u64 {
        1
    }
}

fn main() {}
