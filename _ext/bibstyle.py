"""A pybtex style whose bibliography labels read as the citations do: (Author et al., year).

The book cites author-year (``bibtex_reference_style: author_year``); pybtex's default labels
are alphanumeric ([KLBM25]), so the list at the end would not match the citations in the text.
Registered as the formatting style ``authoryear`` (``bibtex_default_style`` in _config.yml).
"""
from __future__ import annotations

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle


def _plain(latex: str) -> str:
    return Text.from_latex(latex).render_as("text")


class AuthorYearLabelStyle(BaseLabelStyle):
    """"Author, year", "A and B, year" or "A et al., year"; equal labels get a, b, ... after the
    year, in the list's order (Curtis et al., 2024a and 2024b)."""

    def format_labels(self, sorted_entries):
        labels = list(self._labels(sorted_entries))
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        seen: dict[str, int] = {}
        for label in labels:
            if counts[label] == 1:
                yield label
            else:
                seen[label] = seen.get(label, 0) + 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]

    def _labels(self, sorted_entries):
        for entry in sorted_entries:
            persons = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_plain(" ".join(p.last_names)) for p in persons]
            if not names:
                who = _plain(entry.fields.get("organization", entry.key))
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            yield f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"


def setup(app):
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
