"""Networks written from scratch: ResNet blocks, the ResNet and IResNet families and embedding heads."""

__all__: list[str] = []
