"""Markdown tables and optional matplotlib figures for the tools' result files.

One writer for the tables of ``tfcredit-benchmark``, ``tfcredit-compare``,
``tfcredit-fidelity`` and ``tfcredit-dynamics`` (each tool says which columns it
writes), one way to write a tool's ``.json``, ``.md`` and ``.png`` together, and
one way to get matplotlib, which is an optional extra (``pip install
'tfcredit[plots]'``).
"""

import json
import os
import types
from typing import Any, Callable, Iterable, Optional, Sequence

# Column alignment: numbers to the right, text to the left.
LEFT, RIGHT = '---', '---:'
NO_PLOT = "no plot: pip install 'tfcredit[plots]'"


def wrote(output_dir: str, files: Sequence[str], figure: str,
          plotted: bool) -> str:
  """The line a tool prints after writing ``files`` and, when ``plotted``,
  ``figure`` into ``output_dir`` (else how to get the figure)."""
  return (f"wrote {output_dir}/{', '.join(files)}"
          + (f', {figure}' if plotted else f' ({NO_PLOT})'))


def write_results(output_dir: str, name: str, records: Any, table: str,
                  plot: Callable[[str], bool]) -> str:
  """Writes ``name.json`` (``records``), ``name.md`` (``table``) and, through
  ``plot(path)`` (False without matplotlib), ``name.png`` into ``output_dir``;
  prints the table and returns the line saying what was written."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, f'{name}.json'), 'w') as f:
    json.dump(records, f, indent=1)
  with open(os.path.join(output_dir, f'{name}.md'), 'w') as f:
    f.write(table)
  plotted = plot(os.path.join(output_dir, f'{name}.png'))
  print(table)
  return wrote(output_dir, [f'{name}.json', f'{name}.md'], f'{name}.png', plotted)


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


def save_figure(figure, path: str) -> bool:
  """Lays out, writes (120 dpi) and closes a matplotlib ``figure``; True."""
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  pyplot().close(figure)
  return True
