// A borrowed `&str` argument

#[multiloop::task]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
