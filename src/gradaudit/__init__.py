"""gradaudit: check hand-written gradients against jax.grad and finite differences.

The whole public API is re-exported here; everything else is private.

PYTEST_DONT_REWRITE: the pytest plugin's entry point would otherwise make pytest
rewrite this module's asserts and add its helper names to `dir(gradaudit)`.
"""

__version__ = "0.1.0"

from ._check import assert_gradients as assert_gradients
from ._check import check as check
from ._errors import GradauditError as GradauditError
from ._errors import GradientMismatchError as GradientMismatchError
from ._errors import InvalidInputError as InvalidInputError
from ._errors import InvalidTypeError as InvalidTypeError
from ._errors import NondeterministicLossError as NondeterministicLossError
from ._errors import SourceFailedError as SourceFailedError
from ._errors import StructureMismatchError as StructureMismatchError
from ._report import SCHEMA_VERSION as SCHEMA_VERSION
from ._report import Diagnosis as Diagnosis
from ._report import Element as Element
from ._report import ErrorMap as ErrorMap
from ._report import KinkNote as KinkNote
from ._report import LeafReport as LeafReport
from ._report import PairResult as PairResult
from ._report import Report as Report
from ._report import Settings as Settings
from ._report import SourceInfo as SourceInfo
from ._target import Target as Target
from ._target import target as target
from ._taylor import TaylorResult as TaylorResult
