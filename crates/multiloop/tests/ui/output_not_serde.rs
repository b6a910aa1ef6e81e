// An output that is not a serde type

#[multiloop::task]
async fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn main() {}
