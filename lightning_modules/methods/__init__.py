"""The training methods: :class:`~.base.BaseModule` owns the common work (classifier, head, training
attack, validation / test / predict with the reversal, optimizer, resume); each method is a small
subclass that adds its loss: :class:`~.module.ReversalModule` (Mao et al.: joint classifier +
InfoNCE head), :class:`~.advcl.AdvCLModule` and :class:`~.advcl.LinearProbeModule` (adversarial
contrastive pretraining, linear probe), :class:`~.ascl.ASCLModule` (loss in :mod:`.supcon`)."""
