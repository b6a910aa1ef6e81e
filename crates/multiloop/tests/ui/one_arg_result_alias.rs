// A one-argument `Result` alias is an output, not a result
// `io::Result<T>` has one type argument, so the macro treats the whole type as
// the output (with `Error = NoError`), and `io::Error` is not a serde type.

#[multiloop::task]
async fn size(path: String) -> std::io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

fn main() {}
