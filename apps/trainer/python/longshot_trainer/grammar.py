"""The caption grammar of apps/trainer/grammar.json: captions, the held-out split, clip specs."""
import json
import os
from dataclasses import dataclass
from typing import List, Optional

GRAMMAR_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "grammar.json")


@dataclass(frozen=True)
class Caption:
    colour: str
    shape: str
    motion: str
    background: str
    size: Optional[str]  # None: the caption names no size

    def text(self, grammar: "Grammar") -> str:
        size = f"{self.size} " if self.size else ""
        return grammar.template.replace("{size }", size).format(colour=self.colour, shape=self.shape, motion=self.motion, background=self.background)


class Grammar:
    def __init__(self, path: str = GRAMMAR_FILE):
        with open(path) as f:
            g = json.load(f)
        self.width: int = g["width"]
        self.height: int = g["height"]
        self.frames: int = g["frames"]
        self.fps: int = g["fps"]
        self.template: str = g["template"]
        self.shapes: List[str] = g["shapes"]
        self.colours = g["colours"]
        self.backgrounds = g["backgrounds"]
        self.sizes = g["sizes"]
        self.motions = g["motions"]
        self.colour_names = list(self.colours)
        self.motion_names = list(self.motions)

    def held_out(self, colour: str, shape: str, motion: str) -> bool:
        """One motion per (colour, shape) is never shown with it in training."""
        ci, si, mi = self.colour_names.index(colour), self.shapes.index(shape), self.motion_names.index(motion)
        return (3 * ci + 5 * si) % 7 == mi

    def captions(self) -> List[Caption]:
        """Every caption the grammar allows, in a fixed order."""
        out = []
        for colour in self.colour_names:
            for shape in self.shapes:
                for motion in self.motion_names:
                    for background in self.backgrounds:
                        if background == colour:
                            continue
                        for size in [None, *self.sizes]:
                            out.append(Caption(colour, shape, motion, background, size))
        return out

    def training_captions(self) -> List[Caption]:
        return [c for c in self.captions() if not self.held_out(c.colour, c.shape, c.motion)]

    def words(self) -> List[str]:
        """Every word a caption can contain, in a fixed order (the tokenizer's vocabulary)."""
        seen: List[str] = []
        texts = [Caption(c, s, m, b, z).text(self) for c in self.colour_names[:1] for s in self.shapes[:1] for m in self.motion_names for b in self.backgrounds for z in [None, *self.sizes]]
        texts += [Caption(c, s, self.motion_names[0], b, None).text(self) for c in self.colour_names for s in self.shapes for b in list(self.backgrounds)[:1]]
        for t in texts:
            for w in t.split():
                if w not in seen:
                    seen.append(w)
        return seen
