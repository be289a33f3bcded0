"""The stateful streaming wrapper of the codec: audio blocks in, codes out, and back, frame by frame.

Each streaming layer (``layers``) wraps one codec module and keeps the state that module needs
between frames; :class:`StreamingEncoder` and :class:`StreamingDecoder` run stacks of them
(``coder``) and quantize one frame at a time (``frame_quantizer``). ``onnx_engine`` runs the same step
as ONNX graphs (``onnx_export``) on ONNX Runtime, where it is installed (imported from there: a
PyTorch-only program never loads it). Nothing here knows about
sockets, packets or sound cards: that is the ``call`` package, which builds on this one.
"""

from .coder import StartMode
from .decoder import StreamingDecoder
from .encoder import StreamingEncoder

__all__ = ["StartMode", "StreamingDecoder", "StreamingEncoder"]
