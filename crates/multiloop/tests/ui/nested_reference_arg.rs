// A reference nested in an argument type

#[multiloop::task]
async fn count(words: Vec<&'static str>) -> usize {
    words.len()
}

fn main() {}
