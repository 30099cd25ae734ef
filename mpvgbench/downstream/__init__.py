"""Dense-prediction transfer (paper Tables 3 and 4): ViT-Adapter-Ti with Mask R-CNN and UperNet.

Self-contained building blocks: multi-scale deformable attention (:mod:`.msda`), the adapter
around our DeiT (:mod:`.adapter`), the heads (:mod:`.upernet`, :mod:`.detection`), data and
metrics (:mod:`.data`, :mod:`.metrics`), the training order (:mod:`.grouped_batches`), optimiser
groups and schedules (:mod:`.optim`), the training forward and evaluation loops (:mod:`.steps`);
``mpvgbench.train.dense`` trains them. See
``docs/downstream.md`` for every choice and every difference from MMDetection / MMSegmentation.
"""
