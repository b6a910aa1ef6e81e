// A borrowed return type

#[multiloop::task]
async fn version() -> &'static str {
    "1.0"
}

fn main() {}
