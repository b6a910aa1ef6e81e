// `name` given twice

#[multiloop::task(name = "a", name = "b")]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}
