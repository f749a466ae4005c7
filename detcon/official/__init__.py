"""Import the official DetCon release's pretrained checkpoints into torchvision ResNets, exactly.

The release (google-deepmind/detcon, README "Pre-trained checkpoints") publishes Haiku ResNet
weights as ``.npy`` files in its bucket https://storage.googleapis.com/dm-detcon/ (e.g.
``resnet50_detcon_b_imagenet_1k.npy``, ``resnet200_detcon_b_imagenet_1k.npy`` and COCO-pretrained
ResNet-50s). A file is ``np.save`` of a pickled dict; files written with old Haiku versions name
Haiku's own mapping class (``haiku._src.data_structures.FlatMapping``) in the pickle.

This package

- opens such a file without JAX and without executing arbitrary pickles
  (:func:`load_release_file` in :mod:`detcon.official.release`: a restricted unpickler that
  allows numpy arrays, plain builtins and Haiku's mapping classes, the latter read as ``dict``);
- finds the encoder by its Haiku module names anywhere in the tree (the top-level layout is not
  documented) and maps Haiku's ResNet v1 names and layouts to torchvision's
  (:func:`convert_haiku_resnet` in :mod:`detcon.official.convert`);
- rebuilds a torchvision :class:`~torchvision.models.resnet.ResNet` of whatever depth and width
  the weights describe (:func:`resnet_from_state_dict` in :mod:`detcon.official.resnet`:
  ResNet-50/101/152/200, any width multiplier, basic or bottleneck blocks);
- adds TensorFlow "SAME" padding to it (:func:`use_tf_same_padding` in
  :mod:`detcon.official.padding`): Haiku pads asymmetrically (one extra row/column at the
  bottom/right) wherever a stride-2 window meets an even input size, which torchvision's
  symmetric padding does not reproduce. Imported weights are only exact with it; evaluation and
  export of imported weights use it;
- writes the weights to a state dict file or an evaluation-only run directory and loads them for
  evaluation (:mod:`detcon.official.importing`), also as ``detcon import-official``
  (:mod:`detcon.official.cli`).
"""

from detcon.official.cli import register_cli
from detcon.official.convert import convert_haiku_resnet
from detcon.official.importing import (
    ImportSummary,
    backbone_from_state,
    import_official,
    import_run,
    load_official_backbone,
    needs_tf_same_padding,
    official_resnet,
)
from detcon.official.padding import tf_same_pads, use_tf_same_padding
from detcon.official.release import RELEASE_URL, load_release_file
from detcon.official.resnet import (
    HaikuResNet,
    backbone_name,
    check_backbone,
    describe_resnet,
    resnet_from_state_dict,
)

__all__ = [
    "HaikuResNet",
    "ImportSummary",
    "RELEASE_URL",
    "backbone_from_state",
    "backbone_name",
    "check_backbone",
    "convert_haiku_resnet",
    "describe_resnet",
    "import_official",
    "import_run",
    "load_official_backbone",
    "load_release_file",
    "needs_tf_same_padding",
    "official_resnet",
    "register_cli",
    "resnet_from_state_dict",
    "tf_same_pads",
    "use_tf_same_padding",
]
