//! The `prh` command: parses arguments and dispatches to one module per command.

mod cli;

fn main() -> std::process::ExitCode {
    tune_allocator();
    cli::main()
}

/// Starts glibc's allocator where its own adaptation ends. Features and Gram matrices of a few
/// MiB each are allocated and freed by the thousand in a sweep; glibc serves allocations above
/// 128 KiB from fresh zeroed pages (mmap) until the first such block is freed, and only then
/// raises that threshold (up to 32 MiB) and its trim threshold (to twice that). Which blocks
/// happen to be freed first decided whether a sweep's memory was reused or faulted in anew:
/// the paper bench's cold mutual_knn spent 7.9 s of kernel time instead of 2.8 s. With the
/// thresholds set from the start it spends 2.4 s (docs/performance.md).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}
