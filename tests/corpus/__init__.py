"""A corpus of hand-written backprops, each labelled correct, buggy or hard.

Every case pairs a loss written with `jax.numpy` with a gradient derived by hand,
mostly in plain NumPy. The labels say which leaves of the hand-written gradient
are wrong and how, so that gradaudit's verdicts can be checked against them.
"""

from ._activations import CASES as _ACTIVATIONS
from ._attention import CASES as _ATTENTION
from ._case import Case as Case
from ._conv import CASES as _CONV
from ._dense import CASES as _DENSE
from ._embedding import CASES as _EMBEDDING
from ._losses import CASES as _LOSSES
from ._mlp import CASES as _MLP
from ._norm import CASES as _NORM
from ._recurrent import CASES as _RECURRENT

CASES: tuple[Case, ...] = (
    *_DENSE,
    *_ACTIVATIONS,
    *_LOSSES,
    *_NORM,
    *_CONV,
    *_EMBEDDING,
    *_RECURRENT,
    *_ATTENTION,
    *_MLP,
)
