// An `impl Trait` argument

#[multiloop::task]
async fn shout(text: impl Into<String>) -> String {
    text.into().to_uppercase()
}

fn main() {}
