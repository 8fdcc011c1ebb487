"""CaImAn's ``caiman.source_extraction.cnmf.params``: ``CNMFParams``.

The core class already speaks CaImAn: ``CNMFParams(params_dict=,
params_from_file=)``, ``change_params``, ``set(group, dict,
set_if_not_exists=, verbose=)``, ``get``, ``get_group``, ``to_json``,
``to_jsonfile``, ``change_params_from_jsonfile``, ``check_consistency``;
group ``merging``/key ``merge_thr``, the ``online`` group and legacy names
are accepted (see :mod:`gpu_cnmf.params`)."""
from ....params import CNMFParams

__all__ = ["CNMFParams"]
