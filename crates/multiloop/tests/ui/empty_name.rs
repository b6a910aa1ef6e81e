// An empty name

#[multiloop::task(name = "")]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}
