"""A torch Dataset over a catalogue of labelled tiles."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from rsscgeo.data.catalog import Catalog
from rsscgeo.data.images import read_image
from rsscgeo.errors import DatasetError


class TileDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples ``{'image': CxHxW float, 'label': class index or multi-hot}``.

    Pixel values are divided by ``input_scale`` before ``transform`` runs.
    """

    def __init__(
        self,
        catalog: Catalog,
        transform: Callable[[torch.Tensor], torch.Tensor],
        input_scale: float,
        num_bands: int,
    ) -> None:
        self.catalog = catalog
        self.transform = transform
        self.input_scale = input_scale
        self.num_bands = num_bands

    def __len__(self) -> int:
        return len(self.catalog.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.catalog.items[index]
        array = read_image(item.path)
        if array.shape[0] < self.num_bands:
            raise DatasetError(
                f"{item.path} has {array.shape[0]} bands, the model needs {self.num_bands}; "
                "use images with the model's bands."
            )
        image = torch.from_numpy(array[: self.num_bands].astype(np.float32)) / self.input_scale
        label: torch.Tensor
        if self.catalog.task == "multilabel":
            label = torch.zeros(len(self.catalog.classes), dtype=torch.long)
            label[list(item.labels)] = 1
        else:
            label = torch.tensor(item.labels[0])
        return {"image": self.transform(image), "label": label}
