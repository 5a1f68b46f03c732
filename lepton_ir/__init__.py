"""lepton_ir: the graph IR every Lepton pass and backend works on.

Public API: `load`, `save`, `to_onnx`, `to_text`, `from_text`, `evaluate`, the IR classes
(`Model`, `Graph`, `Node`, `Value`, `Attr`, `Function`), types (`DType`, `Shape`, `TensorType`, ...),
constants (`Tensor`, `ArrayTensor`), the errors (`LeptonError` and subclasses), shape
re-propagation after a change (`repropagate`, `replace_constant`, `register_shape_function`)
and the op-semantics tables for channel bookkeeping (`lepton_ir.opsem`).
"""

from .errors import (ExternalDataError, GraphCycleError, LeptonError, ModelLoadError, ModelTooLargeError,
                     RegionError, TextParseError, UnsupportedError, VerifyError)
from .evaluate import evaluate, register_reference_op
from .extract import NodeSpec, Stage, extract, replace_region, run_stages, split_stages
from .graphview import unsized_values, weighted_view
from .ir import Attr, AttrType, Function, Graph, Model, Node, Value
from .onnx_io import load, save, to_onnx
from .shape_inference import (ShapeInferenceError, infer_types, pin_input_shapes, register_shape_function,
                              replace_constant, replace_constants, repropagate)
from .tensor import ArrayTensor, SparseTensor, Tensor
from . import opsem
from .types import DType, MapType, OptionalType, SequenceType, Shape, SparseTensorType, TensorType, Type


def to_text(model: Model, **options) -> str:
    """The readable text form of `model` (see `lepton_ir.text`)."""
    from .text import print_model

    return print_model(model, **options)


def from_text(text: str) -> Model:
    """Parse the text form back into a Model."""
    from .text import parse_model

    return parse_model(text)


__all__ = [
    "load", "save", "to_onnx", "infer_types", "pin_input_shapes", "to_text", "from_text", "evaluate", "register_reference_op",
    "repropagate", "replace_constant", "replace_constants", "register_shape_function", "ShapeInferenceError", "opsem",
    "Model", "Graph", "Node", "Value", "Attr", "AttrType", "Function",
    "DType", "Shape", "TensorType", "SparseTensorType", "SequenceType", "OptionalType", "MapType", "Type",
    "Tensor", "ArrayTensor", "SparseTensor",
    "LeptonError", "ModelLoadError", "ExternalDataError", "ModelTooLargeError", "GraphCycleError",
    "VerifyError", "TextParseError", "UnsupportedError", "RegionError",
    "extract", "replace_region", "split_stages", "run_stages", "Stage", "NodeSpec", "weighted_view",
    "unsized_values",
]
