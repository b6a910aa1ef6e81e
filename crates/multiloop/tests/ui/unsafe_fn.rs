// `unsafe fn`

#[multiloop::task]
async unsafe fn poke(address: usize) -> u8 {
    let _ = address;
    0
}

fn main() {}
