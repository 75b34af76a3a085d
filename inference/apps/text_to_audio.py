"""TextToAudio: an additive synthesizer that plays the prompt.

No weights — nothing can be downloaded where ferry runs its examples — so the
prompt is read as a melody: each character is one note of a pentatonic scale
(any sequence of its notes sounds consonant), whitespace is a rest, and the
melody repeats to fill the duration. The timbre — how loud each harmonic is —
comes from the prompt's sha256, so changing any character changes the sound.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, Field

from ferry.inference.app import endpoint
from ferry.inference.apps import GenerationContext, TorchApp, prompt_seed
from ferry.inference.context import RequestContext
from ferry.toolkit import Audio

NOTE_SECONDS = 0.2
ATTACK_SECONDS = 0.01  # ramps in and out this short are inaudible but stop the clicks a hard edge makes
DECAY_PER_SECOND = 6.0  # a plucked sound: down to 30 % by the note's end
HARMONICS = 6
BASE_HZ = 220.0  # A3
PENTATONIC_SEMITONES = (0, 2, 4, 7, 9)  # major pentatonic
OCTAVES = 3
PEAK = 0.8  # headroom below full scale


class TextToAudioInput(BaseModel):
    prompt: str = Field(min_length=1, description="The melody: one note per character, whitespace rests.")
    duration_seconds: float = Field(default=2.0, ge=0.1, le=30.0)
    sample_rate: int = Field(default=24000, ge=8000, le=96000)


class AudioOutput(BaseModel):
    audio: Audio


def note_frequencies(prompt: str) -> list[float | None]:
    """One pitch in Hz per character of `prompt`, None for whitespace (a rest)."""
    notes: list[float | None] = []
    for character in prompt:
        if character.isspace():
            notes.append(None)
            continue
        code = ord(character)
        degree = PENTATONIC_SEMITONES[code % len(PENTATONIC_SEMITONES)]
        octave = (code // len(PENTATONIC_SEMITONES)) % OCTAVES
        notes.append(BASE_HZ * 2 ** ((degree + 12 * octave) / 12))
    return notes


def note_envelope(length: int, sample_rate: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Loudness over one note: a short attack, an exponential decay, a short release at the end."""
    seconds = torch.arange(length, device=device, dtype=torch.float32) / sample_rate
    remaining = seconds[-1] - seconds
    ramp = torch.minimum(seconds, remaining).div(ATTACK_SECONDS).clamp(max=1.0)
    return ramp * torch.exp(-DECAY_PER_SECOND * seconds)


def synthesize(
    prompt: str,
    duration_seconds: float = 2.0,
    sample_rate: int = 24000,
    context: GenerationContext | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Mono float32 samples in [-PEAK, PEAK]; `context` hears each note and may stop the loop between notes."""
    count = max(1, round(duration_seconds * sample_rate))
    note_length = round(NOTE_SECONDS * sample_rate)
    melody = note_frequencies(prompt)
    timbre = torch.Generator().manual_seed(prompt_seed(prompt))
    harmonics = torch.arange(1, HARMONICS + 1, dtype=torch.float32)
    # Higher harmonics quieter on the whole, each one's share set by the prompt.
    amplitudes = (torch.rand(HARMONICS, generator=timbre) / harmonics).to(device).view(-1, 1)
    harmonics = harmonics.to(device).view(-1, 1)

    samples = torch.zeros(count, device=device)
    seconds = torch.arange(note_length, device=device, dtype=torch.float32) / sample_rate
    envelope = note_envelope(note_length, sample_rate, device)
    starts = range(0, count, note_length)
    for index, start in enumerate(starts):
        if context is not None:
            context.raise_if_cancelled()
        frequency = melody[index % len(melody)]
        if frequency is not None:
            length = min(note_length, count - start)
            # Harmonics at or above Nyquist would fold back as inharmonic tones: they are left out.
            audible = harmonics * frequency < sample_rate / 2
            waves = torch.sin(2 * math.pi * frequency * harmonics * seconds[:length])
            tone = (amplitudes * audible * waves).sum(dim=0)
            # A note cut short by the end of the clip still gets its release, or the file would end in a click.
            shape = envelope if length == note_length else note_envelope(length, sample_rate, device)
            samples[start : start + length] = tone * shape
        if context is not None:
            context.progress(index + 1, len(starts))
    peak = samples.abs().max()
    return samples * (PEAK / peak) if peak > 0 else samples


class TextToAudio(TorchApp):
    app_id = "text-to-audio"

    @endpoint("/")
    def run(self, input: TextToAudioInput, context: RequestContext) -> AudioOutput:
        """Plays the prompt as a melody, one note per character, as a wav file."""
        with torch.inference_mode():
            samples = synthesize(input.prompt, input.duration_seconds, input.sample_rate, context, self.device)
        return AudioOutput(audio=Audio.from_tensor(samples, sample_rate=input.sample_rate))
