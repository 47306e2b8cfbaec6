


emaila


emaila


emaila


emaila


emaila


emaila


emaila


emaila


emaila


emaila


emaila