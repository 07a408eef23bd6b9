"""Models: the image encoder (`encoder`, with `efficientnet_lite` and its `.pth` reader `torchfile`), its feature
cache (`features`), attention, the caption decoder (`decoder`), the VQA question encoder and head (`vqa_head`), and
the networks a run holds, `CaptionModel` and `VQAModel`, with how they are built (`networks`)."""
