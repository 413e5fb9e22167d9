"""A table-driven FlatBuffers verifier-decoder and writer, driven by a schema description.

- :mod:`~libkiki.flatbuf.schema`: the description of one ``.fbs`` schema (:class:`Schema`) and
  which Python types its tables decode to and encode from;
- :mod:`~libkiki.flatbuf.reader`: :class:`Reader`, the verifier every untrusted buffer goes
  through, with its :class:`Limits`;
- :mod:`~libkiki.flatbuf.compiled`: the per-table reader functions it runs, generated from the
  schema;
- :mod:`~libkiki.flatbuf.interpret`: the same checks interpreted field by field, the reference
  the tests hold the compiled readers to (on no trust boundary);
- :mod:`~libkiki.flatbuf.writer`: :class:`Writer` and the position-independent :class:`Chunk`.

Nothing here knows any particular schema: ``libkiki.a11y.schema`` describes ``a11y.fbs`` and
``libkiki.a11y.wire`` is its codec.
"""

from libkiki.flatbuf.reader import Limits, Reader
from libkiki.flatbuf.schema import Schema
from libkiki.flatbuf.writer import Chunk, Writer

__all__ = ["Chunk", "Limits", "Reader", "Schema", "Writer"]
