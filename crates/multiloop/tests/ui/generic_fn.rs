// A generic function

#[multiloop::task]
async fn echo<T>(value: T) -> T {
    value
}

fn main() {}
