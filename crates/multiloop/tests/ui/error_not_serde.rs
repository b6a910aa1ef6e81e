// An error type that is not a serde type

#[multiloop::task]
async fn read(path: String) -> Result<Vec<u8>, std::io::Error> {
    std::fs::read(path)
}

fn main() {}
