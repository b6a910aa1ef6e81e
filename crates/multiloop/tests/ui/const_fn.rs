// `const fn`

#[multiloop::task]
const fn answer() -> u64 {
    42
}

fn main() {}
