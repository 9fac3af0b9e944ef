//! `cargo bench -p apflow-prompt-proc --bench subtract`: Alard–Lupton subtraction with
//! decorrelation of a 4096² synthetic star field (template narrower, order-1 spatial
//! kernel, default config), one core.

use apflow_prompt_proc::convolve::RealFft2d;
use apflow_prompt_proc::image::{Image, MaskedImage};
use apflow_prompt_proc::psf::{GaussianPsf, Psf};
use apflow_prompt_proc::subtract::{SubtractConfig, subtract};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::time::Instant;

const N: usize = 4096;

fn render(img: &mut Image<f32>, psf: &GaussianPsf, x: f64, y: f64, flux: f64) {
    let size = 2 * (5.0 * psf.sigma).ceil() as usize + 1;
    let (ix, iy) = (x.round(), y.round());
    let k = psf.image_at_shifted(x, y, size, x - ix, y - iy);
    let h = (size / 2) as isize;
    for j in 0..size {
        for i in 0..size {
            let (px, py) = (ix as isize + i as isize - h, iy as isize + j as isize - h);
            if px >= 0 && py >= 0 && (px as usize) < N && (py as usize) < N {
                *img.at_mut(px as usize, py as usize) += (flux * k.get(i, j) as f64) as f32;
            }
        }
    }
}

/// CPU seconds (user + system) of this thread so far, from /proc (Linux; 0 elsewhere):
/// the machine is shared, so wall-clock times overstate the cost.
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            // Fields after the command: state is index 0, utime 11, stime 12.
            let f: Vec<&str> = rest.split_whitespace().collect();
            let t = |i: usize| f.get(i)?.parse::<f64>().ok();
            Some((t(11)? + t(12)?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn bench_fft(c: &mut Criterion) {
    let img = Image::from_vec(N, N, (0..N * N).map(|i| (i % 97) as f32).collect());
    let mut fft = RealFft2d::new(N, N);
    let mut spec = fft.new_spectrum();
    let mut g = c.benchmark_group("fft");
    g.sample_size(10);
    g.bench_function("real_2d_forward_4096", |b| {
        b.iter(|| fft.forward_image(&img, |_, v| v, &mut spec))
    });
    let k = Image::filled(13, 13, 1.0f32);
    g.bench_function("kernel_spectrum_4096", |b| {
        b.iter(|| fft.forward_kernel(&k, &mut spec))
    });
    g.bench_function("real_2d_inverse_4096", |b| {
        b.iter(|| {
            fft.inverse_with(&mut spec, N, N, |_, r| {
                std::hint::black_box(r);
            })
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sci_psf = GaussianPsf::from_fwhm(4.0);
    let tmpl_psf = GaussianPsf::from_fwhm(3.0);
    let mut s = Image::<f32>::new(N, N);
    let mut t = Image::<f32>::new(N, N);
    let mut candidates = Vec::new();
    for _ in 0..8000 {
        let x = rng.random_range(5.0..N as f64 - 5.0);
        let y = rng.random_range(5.0..N as f64 - 5.0);
        let f = 2e3 * (50f64).powf(rng.random::<f64>());
        render(&mut t, &tmpl_psf, x, y, f);
        render(&mut s, &sci_psf, x, y, f * 1.03);
        if f > 3e4 {
            candidates.push((x, y));
        }
    }
    let ns = Normal::new(0.0, 10.0).unwrap();
    let nt = Normal::new(0.0, 5.77).unwrap();
    for (a, b) in s.data_mut().iter_mut().zip(t.data_mut()) {
        *a += 5.0 + ns.sample(&mut rng) as f32;
        *b += nt.sample(&mut rng) as f32;
    }
    let science = MaskedImage::from_parts(s, Image::filled(N, N, 100.0), Image::new(N, N));
    let template = MaskedImage::from_parts(t, Image::filled(N, N, 33.3), Image::new(N, N));
    let cfg = SubtractConfig::default();
    for (name, cfg) in [
        ("order 1", SubtractConfig::default()),
        (
            "order 2",
            SubtractConfig {
                spatial_order: 2,
                ..SubtractConfig::default()
            },
        ),
    ] {
        let c0 = thread_cpu_s();
        let t0 = Instant::now();
        for _ in 0..5 {
            std::hint::black_box(
                subtract(&science, &sci_psf, &template, &tmpl_psf, &candidates, &cfg).unwrap(),
            );
        }
        eprintln!(
            "{name}: mean of 5 runs: {:.0} ms wall, {:.0} ms CPU",
            t0.elapsed().as_secs_f64() * 200.0,
            (thread_cpu_s() - c0) * 200.0
        );
    }
    let t0 = Instant::now();
    let sub = subtract(&science, &sci_psf, &template, &tmpl_psf, &candidates, &cfg).unwrap();
    eprintln!(
        "one run {:.0} ms ({:?}): {} candidates, {} stamps used, {} rejected, kernel sum {:.4}",
        t0.elapsed().as_secs_f64() * 1e3,
        sub.timings,
        candidates.len(),
        sub.n_stamps_used,
        sub.n_stamps_rejected,
        sub.kernel_sum_at_centre
    );
    drop(sub);
    let mut g = c.benchmark_group("subtract");
    g.sample_size(10);
    g.bench_function("alard_lupton_decorrelated_4096", |b| {
        b.iter(|| subtract(&science, &sci_psf, &template, &tmpl_psf, &candidates, &cfg).unwrap())
    });
    let cfg2 = SubtractConfig {
        spatial_order: 2,
        ..SubtractConfig::default()
    };
    g.bench_function("alard_lupton_decorrelated_order2_4096", |b| {
        b.iter(|| subtract(&science, &sci_psf, &template, &tmpl_psf, &candidates, &cfg2).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_fft, bench);
criterion_main!(benches);
