"""List preparers: VoxCeleb-format train and trial lists for corpora already on disk.

Each preparer scans a known layout, writes ``SPEAKER relative/path`` train lists (and trial lists
``LABEL enroll test`` where the corpus has none), and returns a summary of what it wrote
(:class:`FolderLists`, :class:`SpeechoceanLists`, :class:`VoxcelebLists`), which
:func:`xvec.report.prepared_text` renders. Lists are sorted and written atomically, so a re-run
gives identical bytes and an interrupted one never leaves half a list. Anything wrong with the
input is one :class:`~xvec.errors.XvecError` naming the folder and what to do.
"""

from xvec.prepare.common import (
    AUDIO_EXTENSIONS,
    FolderLists,
    SpeechoceanLists,
    TrainListSummary,
    TrialListSummary,
    VoxcelebLists,
    check_overwrite,
    find_audio,
    write_train_list,
    write_trials,
)
from xvec.prepare.folder import prepare_folder
from xvec.prepare.speechocean762 import prepare_speechocean762
from xvec.prepare.trials import TrialPairs, build_trials
from xvec.prepare.voxceleb import VOX1_TRAIN_LIST, VOX2_TRAIN_LIST, prepare_voxceleb

__all__ = [
    "AUDIO_EXTENSIONS",
    "VOX1_TRAIN_LIST",
    "VOX2_TRAIN_LIST",
    "FolderLists",
    "SpeechoceanLists",
    "TrainListSummary",
    "TrialListSummary",
    "TrialPairs",
    "VoxcelebLists",
    "build_trials",
    "check_overwrite",
    "find_audio",
    "prepare_folder",
    "prepare_speechocean762",
    "prepare_voxceleb",
    "write_train_list",
    "write_trials",
]
