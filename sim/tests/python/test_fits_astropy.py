"""Checks with astropy that apflow-sim's FITS files parse and hold what Rust wrote.

Produce the input directory, then run pytest on this file:

    cargo run --release -p apflow-sim --example render_one -- /tmp/apflow-sim-fixture 512
    APFLOW_SIM_DIR=/tmp/apflow-sim-fixture python -m pytest sim/tests/python/test_fits_astropy.py

`render_one` writes `raw.fits` (one detector of one visit), `truth.csv`, a night's
template tiles under `templates/`, and `expected.json`: header values, sky positions of
pixels computed by the Rust WCS, and per-amplifier SHA-256 digests (of the pixels as
little-endian int32, row-major), sums and sample values.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

DIR = Path(os.environ.get("APFLOW_SIM_DIR", ""))
pytestmark = pytest.mark.skipif(
    not (DIR / "expected.json").is_file(), reason="APFLOW_SIM_DIR does not hold render_one output"
)


@pytest.fixture(scope="module")
def expected():
    return json.loads((DIR / "expected.json").read_text())


@pytest.fixture(scope="module")
def hdul(expected):
    with fits.open(DIR / expected["raw"]) as h:
        h.verify("exception")
        yield h


def test_primary_header_keys(hdul, expected):
    h = hdul[0].header
    for key in ["VISIT", "EXPOSURE", "SNAP", "DETECTOR"]:
        assert h[key] == expected["header"][key], key
    assert h["BAND"] == expected["header"]["BAND"]
    assert h["TIMESYS"] == "TAI"
    for key in ["MJD-OBS", "MJD-END", "EXPTIME", "RA", "DEC", "ROTPA", "AIRMASS", "SEEING"]:
        assert h[key] == pytest.approx(expected["header"][key], rel=1e-14, abs=1e-10), key
    assert h["MJD-END"] > h["MJD-OBS"]
    assert h["DATE-OBS"].startswith("20")
    for key in ["TELESCOP", "INSTRUME", "DATE-OBS", "DATE-END", "NAMPS"]:
        assert key in h


def test_wcs_parses_and_matches_rust(hdul, expected):
    w = WCS(hdul[0].header)
    assert w.sip is not None, "SIP distortion not recognised"
    assert list(w.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    for p in expected["wcs_points"]:
        ra, dec = w.all_pix2world([[p["x"], p["y"]]], 0)[0]
        dra = ((ra - p["ra"] + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
        assert abs(dra) * 3.6e6 < 0.1, f"RA differs by {dra * 3.6e6} mas at {p}"
        assert abs(dec - p["dec"]) * 3.6e6 < 0.1, f"Dec differs at {p}"
        x, y = w.all_world2pix([[p["ra"], p["dec"]]], 0, tolerance=1e-10)[0]
        assert abs(x - p["x"]) < 1e-5 and abs(y - p["y"]) < 1e-5


def test_amplifier_pixels_equal_what_rust_wrote(hdul, expected):
    assert len(expected["amps"]) == 16
    for amp in expected["amps"]:
        hdu = hdul[amp["extname"]]
        data = hdu.data
        assert data.dtype.kind == "i" and hdu.header["BITPIX"] == 32
        assert list(data.shape) == amp["shape"]
        digest = hashlib.sha256(data.astype("<i4").tobytes()).hexdigest()
        assert digest == amp["sha256_le_i32"], amp["extname"]
        assert int(data.astype(np.int64).sum()) == amp["sum"]
        for row, col, value in amp["samples"]:
            assert data[row, col] == value
        assert hdu.header["GAIN"] == amp["gain"]
        assert hdu.header["RDNOISE"] == amp["rdnoise"]
        assert hdu.header["DETSEC"] == amp["detsec"]
        for key in ["DATASEC", "BIASSEC"]:
            assert hdu.header[key].startswith("[")


def test_overscan_is_bias_and_data_has_sky(hdul):
    for hdu in hdul[1:]:
        d = hdu.data.astype(float)
        # BIASSEC / DATASEC in IRAF notation: [x1:x2,y1:y2], 1-based inclusive.
        def section(key):
            (x1, x2), (y1, y2) = [tuple(int(v) for v in part.split(":")) for part in hdu.header[key].strip("[]").split(",")]
            return d[y1 - 1 : y2, x1 - 1 : x2]
        overscan = section("BIASSEC")[:, 4:]
        data = section("DATASEC")
        rn_adu = hdu.header["RDNOISE"] / hdu.header["GAIN"]
        assert np.std(overscan) == pytest.approx(rn_adu, rel=0.1)
        assert np.median(data) > np.median(overscan) + 5 * rn_adu


def test_template_tile_parses(expected):
    if not expected.get("template"):
        pytest.skip("no template tile")
    with fits.open(DIR / expected["template"]) as h:
        h.verify("exception")
        w = WCS(h[0].header)
        assert list(w.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
        assert h[0].header["BUNIT"] == "nJy"
        img, var, psf = h[0].data, h["VARIANCE"].data, h["PSF"].data
        assert img.shape == var.shape and np.all(var > 0)
        assert psf.sum() == pytest.approx(1.0, abs=1e-4)
        # Pixel noise matches the variance plane in source-free pixels.
        resid = img / np.sqrt(var)
        mad = 1.4826 * np.median(np.abs(resid - np.median(resid)))
        assert mad == pytest.approx(1.0, abs=0.1)
