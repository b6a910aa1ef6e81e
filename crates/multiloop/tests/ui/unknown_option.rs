// An unknown option

#[multiloop::task(retries = 3)]
async fn fetch(url: String) -> usize {
    url.len()
}

fn main() {}
