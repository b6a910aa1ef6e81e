// An error type that is not `Debug`

#[derive(serde::Serialize, serde::Deserialize)]
struct Opaque;

#[multiloop::task]
async fn fails() -> Result<u64, Opaque> {
    Err(Opaque)
}

fn main() {}
