//! The training-throughput benchmark: `SCA_BENCH=depth,base_width,size,batch,steps
//! cargo run --release -p sca-train --example bench_unet` prints one JSON line,
//! to compare with `sca-train/bench/unet_reference.py` (PyTorch) on the same machine.

use sca_train::bench::bench_train;

#[global_allocator]
static ALLOC: sca_train::alloc::Allocator = sca_train::alloc::Allocator;

fn main() {
    sca_train::alloc::keep_freed_memory();
    let spec = std::env::var("SCA_BENCH").unwrap_or_else(|_| "4,32,256,8,3".into());
    let v: Vec<usize> = spec
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let [depth, width, size, batch, steps] = v[..] else {
        eprintln!("SCA_BENCH must be five integers: depth,base_width,size,batch,steps");
        std::process::exit(2);
    };
    match bench_train(depth as u8, width as u32, size, batch, steps, 0) {
        Ok(tps) => println!(
            "{{\"impl\":\"sca-train\",\"size\":{size},\"batch\":{batch},\"depth\":{depth},\"base_width\":{width},\"steps\":{steps},\"s_per_step\":{},\"tiles_per_s\":{tps}}}",
            batch as f64 / tps
        ),
        Err(e) => {
            eprintln!("bench_unet: {e}");
            std::process::exit(1);
        }
    }
}
