"""Markdown tables and optional matplotlib figures for the tools' result files.

One writer for the tables of ``tfcredit-benchmark``, ``tfcredit-compare`` and
``tfcredit-fidelity`` (each tool says which columns it writes), and one way to get
matplotlib, which is an optional extra (``pip install 'tfcredit[plots]'``).
"""

import types
from typing import Iterable, Optional, Sequence

# Column alignment: numbers to the right, text to the left.
LEFT, RIGHT = '---', '---:'
NO_PLOT = "no plot: pip install 'tfcredit[plots]'"


def wrote(output_dir: str, files: Sequence[str], figure: str,
          plotted: bool) -> str:
  """The line a tool prints after writing ``files`` and, when ``plotted``,
  ``figure`` into ``output_dir`` (else how to get the figure)."""
  return (f"wrote {output_dir}/{', '.join(files)}"
          + (f', {figure}' if plotted else f' ({NO_PLOT})'))


def markdown_table(header: Sequence[str], alignment: Sequence[str],
                   rows: Iterable[Sequence[str]]) -> str:
  """A GitHub markdown table of already formatted cells (no trailing newline).

  Raises:
    ValueError: a row or the alignment has another number of cells than the
      header.
  """
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(alignment) + '|']
  if len(alignment) != len(header):
    raise ValueError(f'{len(alignment)} alignments for {len(header)} columns')
  for row in rows:
    if len(row) != len(header):
      raise ValueError(f'a row of {len(row)} cells for {len(header)} columns: '
                       f'{list(row)}')
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)


def pyplot() -> Optional[types.ModuleType]:
  """matplotlib's ``pyplot`` on the file-only Agg backend, or None when
  matplotlib is not installed (the tools then write no figure)."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as module  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return module
