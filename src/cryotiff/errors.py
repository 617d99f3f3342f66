"""Errors raised by cryotiff.

Every error the library raises on purpose derives from :class:`CryotiffError`, so that the
command line can turn it into one clear line (naming the file and the problem) instead of a
traceback. Messages are complete sentences that name the file concerned.
"""

from __future__ import annotations


class CryotiffError(Exception):
    """Base class of every error cryotiff raises on purpose."""


class InputError(CryotiffError):
    """An input file is missing, unreadable, or not what its name says."""


class MrcFormatError(InputError):
    """An MRC file is damaged or uses a feature that cannot be read (garbage mode, truncated data)."""


class TiffFormatError(InputError):
    """A TIFF movie cannot be read (corrupt, unsupported sample type, pages of different shapes)."""


class EerFormatError(InputError):
    """An EER file is damaged or uses an unsupported encoding."""


class StarFormatError(InputError):
    """A STAR or list file cannot be parsed or lacks the movie name column."""


class NamesNoMovieError(InputError):
    """An input names no movie now (an empty directory, a pattern without matches, a list or
    STAR file without movies): not damage, and normal while ``--watch`` waits for a collection."""


class EmptyStarError(StarFormatError, NamesNoMovieError):
    """A STAR file that is empty or whose movies table lists no movie."""


class NotEnoughMemoryError(CryotiffError):
    """A movie's frames need more memory than this process can get (refused before they are
    allocated)."""


class GainError(CryotiffError):
    """A gain file is unreadable, of the wrong size, or inconsistent with the movies."""


class UnexpectedPixelValueError(CryotiffError):
    """A pixel marked reliable is not an integer multiple of its gain (RELION's mode-2 error)."""


class OptionError(CryotiffError):
    """The command-line options are invalid or contradict each other."""


class ExistingOutputError(OptionError):
    """A file of ``--o`` that an earlier run wrote, and that other outputs may need, would be
    replaced by a different one: the run refuses (give another ``--o``)."""


class NotYetSupportedError(OptionError):
    """An option that exists in the interface but is not implemented yet."""


class OutputError(CryotiffError):
    """An output file or directory cannot be written (permissions, full disk)."""


class VerificationError(CryotiffError):
    """A written strip or file does not decode to the frame it was made from."""


class RenderOverflowError(CryotiffError):
    """A rendered count does not fit the requested output sample type."""
