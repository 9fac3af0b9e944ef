//! Warping simulator template tiles onto a 4096² science detector (one core).
//! `cargo bench -p apflow-prompt-proc --bench warp`

#[path = "../tests/common/mod.rs"]
mod common;

use apflow_core::ids::DetectorId;
use apflow_prompt_proc::io::TemplateTile;
use apflow_prompt_proc::warp::{WarpConfig, select_tiles, warp_template};
use apflow_sim::{Night, NightSpec};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let night = Night::new(&NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 4096,
        seed: 5,
        ..NightSpec::default()
    })
    .unwrap();
    let band = night.visits()[0].band;
    let sim_tiles = night.template_tiles(band);
    let index: Vec<_> = sim_tiles.iter().map(common::tile_info).collect();
    let wcs = night.true_wcs(0, DetectorId(0)).unwrap();
    let selected = select_tiles(&index, band.as_str(), &wcs, 4096, 4096);
    let tiles: Vec<TemplateTile> = sim_tiles
        .iter()
        .filter(|t| selected.iter().any(|s| s.id == t.id))
        .map(|t| common::tile_from_sim(&night, t))
        .collect();
    eprintln!("{} tiles", tiles.len());
    let cfg = WarpConfig::default();
    let mut g = c.benchmark_group("warp");
    g.sample_size(10);
    g.bench_function("template_4096", |b| {
        b.iter(|| warp_template(&tiles.iter().collect::<Vec<_>>(), &wcs, 4096, 4096, &cfg).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
