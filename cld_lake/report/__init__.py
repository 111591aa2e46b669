"""A self-contained HTML report of a lake (``cld-lake report LAKE --out FILE.html``).

The page holds the splits and scores tables; the mean loss curves; per-class loss curves of
validation vs training samples with the highest, near-zero and most negative CLD (the CLD
paper's Figure 1); score distributions (noisy labels apart when the samples table has a
``noisy`` flag); a data map (confidence vs variability of ``p_true = exp(-loss)``, coloured
by CLD); Spearman correlations between the stored scores; a noisy-label detection table
(AUROC and precision at the noise rate, every score oriented by its direction); and the rank
stability of CLD scores of different windows; diagnostics (:mod:`cld_lake.diagnostics`): the
per-class share of ``cld <= 0``, the mean CLD of each manifest in ``LAKE/manifests/``, the rank
stability of scores from different runs and, given the comparison harness's ``results.json``,
test accuracy vs fraction per method. Figures are matplotlib PNGs embedded as base64:
the file opens from disk, offline, with no script, font or style sheet from elsewhere.

Bounded memory and time: one streaming pass per split (sums per checkpoint, per chosen
class and CLD group), and the scores table streamed one row group at a time, a few reads per
score; the points drawn (data map) and correlated (Spearman) come from a strided sample of at
most ``max_points`` training rows, said so on the page. Histograms, detection tables and
curves use every sample. Up to ``exact_rows`` (:data:`EXACT_ROWS`) training rows a score
column is held whole (8 bytes per sample) and every figure is exact; above,
memory does not grow with N but for the noisy flags (held as bits, N / 8 bytes): histograms,
counts, the per-class share of ``cld <= 0``, coreset means and every top-ranked detection
figure stay exact (streamed); AUROC comes from a fine histogram, within a bound the page
states; the rank stability between runs and the per-class CLD groups are taken on uniform
strided samples of at most ``exact_rows`` rows, said so on the page. Each manifest in
``LAKE/manifests/`` is loaded whole (its checksum covers the whole file), so the coreset
alignment holds a manifest's rows, one manifest at a time. A scores table that no longer
matches the train rows is mapped by sample id through the split's ids, held whole.

Modules: ``_page`` (:func:`build_report`, :func:`report_path`: the page put together),
``_data`` (the train split's score columns and noisy flags, streamed), one module per group of
sections (``_dynamics``, ``_scores``, ``_diagnostics``), ``_html`` (tables, figures, the
document), ``_plots`` (matplotlib figures), ``_stats`` (the streaming pass over a split,
histogram helpers), ``_compare`` (the comparison harness's results). The noisy-label
detection figures come from :mod:`cld_lake.diagnostics`.
"""

from cld_lake.report._compare import compare_series, load_compare
from cld_lake.report._data import EXACT_ROWS, MAX_POINTS
from cld_lake.report._dynamics import curve_stats
from cld_lake.report._page import build_report, report_path

__all__ = [
    "EXACT_ROWS",
    "MAX_POINTS",
    "build_report",
    "compare_series",
    "curve_stats",
    "load_compare",
    "report_path",
]
