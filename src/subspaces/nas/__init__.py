"""Weight-sharing neural architecture search on a tabular benchmark that ships with the package.

The architectures of a small search space span a family of networks whose weights a supernet
shares; how that family is sampled decides how well the shared weights rank its members.

- spaces: :class:`CellSpace` (NAS-Bench-201-like, 625 cells), :class:`MacroSpace` (kernel x width)
- benchmark: :class:`TabularBenchmark` (``query(arch) -> accuracy, params, train_time``),
  :func:`build_benchmark` (``subspaces nas build-bench``)
- supernets: :class:`CellSupernet`, :func:`train_supernet` with :class:`UniformSampler` (SPOS) or
  :class:`PADASampler` (PA&DA, Lu et al., arXiv:2302.14772), :func:`inherited_accuracies`
- weight entanglement (Sukthanker et al., arXiv:2312.10440): :class:`EntangledConv` (one
  convolution over mixed weights) vs :class:`OutputMixedConv` (DARTS output mixing),
  :class:`MacroSupernet`, :func:`search` (DARTS / GDAS, argmax discretisation)
- metrics: :func:`kendall_tau`, :func:`top_k_regret`; :class:`TensorMemoryTracker` (peak memory)
"""

from .bench import BenchConfig, BenchResult, TabularBenchmark, build_benchmark
from .entangled import EntangledConv, MacroSupernet, OutputMixedConv, search
from .memory import TensorMemoryTracker
from .metrics import kendall_tau, top_k_regret
from .networks import CellNetwork, MacroNetwork, digits_images
from .pada import PADASampler, data_importance
from .space import CELL_OPS, CellSpace, MacroSpace
from .supernet import CellSupernet, UniformSampler, inherited_accuracies, train_supernet

__all__ = [
    "CELL_OPS",
    "BenchConfig",
    "BenchResult",
    "CellNetwork",
    "CellSpace",
    "CellSupernet",
    "EntangledConv",
    "MacroNetwork",
    "MacroSpace",
    "MacroSupernet",
    "OutputMixedConv",
    "PADASampler",
    "TabularBenchmark",
    "TensorMemoryTracker",
    "UniformSampler",
    "build_benchmark",
    "data_importance",
    "digits_images",
    "inherited_accuracies",
    "kendall_tau",
    "search",
    "top_k_regret",
    "train_supernet",
]
