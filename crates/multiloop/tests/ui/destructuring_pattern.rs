// A destructuring pattern

#[multiloop::task]
async fn sum((a, b): (u64, u64)) -> u64 {
    a + b
}

fn main() {}
