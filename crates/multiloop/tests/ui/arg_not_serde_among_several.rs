// A non-serde argument among several
// The check points at the offending argument's type, not at the attribute.

struct NotSerde;

#[multiloop::task]
async fn consume(count: u64, value: NotSerde) -> Result<u64, String> {
    let _ = value;
    Ok(count)
}

fn main() {}
