"""One self-contained HTML file: what ``tether compare`` says, then the figures of the studies.

The page, top to bottom:

1. the comparison table of :mod:`~tether.search.results.compare`, with its 95 % intervals and
   the differences paired with the baseline: what a reader came for;
2. the setup: the spec (recipe, conditions, methods and their spaces, budget, sampler,
   pruner, evaluation), the storage (password masked), when the trials ran and when the
   report was written, and the versions the search ran with and the report was written with;
3. the methods compared, one facet per condition and repeat of the search (never overlaid):
   test accuracy, mean and 95 % interval over the evaluation seeds, on an axis that spans the
   values rather than one from zero; the difference to the baseline paired by seed; test
   accuracy against the device-hours of search and evaluation; with conditions, each method's
   test accuracy across them;
4. for each search (each condition, each repeat), Tether's figures beside the ones Optuna
   draws (``optuna.visualization``): each method's history as small multiples; the learning
   curves of every trial, pruned ones too (``plot_intermediate_values``); the trials'
   timeline (``plot_timeline``); the distribution of each method's values (``plot_edf``);
   validation accuracy against each searched parameter; the distance profile of each
   method's best trial; parameter importance (``plot_param_importances``) for the studies
   with :data:`MIN_IMPORTANCE_TRIALS` complete trials, a line saying why for the others.

A method has one colour in every figure (:func:`method_colours`). plotly.js is inlined once,
in the page's head, so the file opens offline.

- :mod:`~._common`: the methods' colours, the figure and section records, one look;
- :mod:`~.compared`: the methods compared (part 3);
- :mod:`~.search`: one search's figures (part 4);
- :mod:`~.page`: the table, the setup and the page around the figures, :func:`write_report`.
"""

from tether.search.results.report._common import PALETTE
from tether.search.results.report._common import Plot
from tether.search.results.report._common import Section
from tether.search.results.report._common import method_colours
from tether.search.results.report._common import tight_range
from tether.search.results.report.compared import Facet
from tether.search.results.report.compared import by_condition_figure
from tether.search.results.report.compared import comparison_figure
from tether.search.results.report.compared import cost_quality_figure
from tether.search.results.report.compared import difference_figure
from tether.search.results.report.compared import overview
from tether.search.results.report.page import CONFIG
from tether.search.results.report.page import STYLE
from tether.search.results.report.page import TABLE_NOTE
from tether.search.results.report.page import page_html
from tether.search.results.report.page import sections
from tether.search.results.report.page import setup_html
from tether.search.results.report.page import table_html
from tether.search.results.report.page import write_report
from tether.search.results.report.search import MIN_IMPORTANCE_TRIALS
from tether.search.results.report.search import STATE_PATTERNS
from tether.search.results.report.search import VALUE
from tether.search.results.report.search import distances_figure
from tether.search.results.report.search import edf_figure
from tether.search.results.report.search import history_figure
from tether.search.results.report.search import importance_figure
from tether.search.results.report.search import learning_curves_figure
from tether.search.results.report.search import params_figure
from tether.search.results.report.search import search_section
from tether.search.results.report.search import timeline_figure


__all__ = [
    "CONFIG",
    "MIN_IMPORTANCE_TRIALS",
    "PALETTE",
    "STATE_PATTERNS",
    "STYLE",
    "TABLE_NOTE",
    "VALUE",
    "Facet",
    "Plot",
    "Section",
    "by_condition_figure",
    "comparison_figure",
    "cost_quality_figure",
    "difference_figure",
    "distances_figure",
    "edf_figure",
    "history_figure",
    "importance_figure",
    "learning_curves_figure",
    "method_colours",
    "overview",
    "page_html",
    "params_figure",
    "search_section",
    "sections",
    "setup_html",
    "table_html",
    "tight_range",
    "timeline_figure",
    "write_report",
]
