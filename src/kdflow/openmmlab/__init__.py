"""kdflow's bridge to OpenMMLab (mmengine, mmcv, mmsegmentation).

``compat`` makes ``mmseg`` importable where mmcv's compiled ops are absent; ``modules`` registers
kdflow's own mmseg components (backbone variant, KDEP's PSP head, the manifest dataset, the strict
initializer). Import them through :func:`kdflow.openmmlab.compat.import_mmseg`.
"""
