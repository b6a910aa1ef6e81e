// Calling the task like the original function
// The name is a unit struct after expansion; the function is `name::run`.

#[multiloop::task]
async fn add(a: u64, b: u64) -> u64 {
    a + b
}

async fn twice() -> u64 {
    add(1, 2).await + add::run(1, 2).await
}

fn main() {}
