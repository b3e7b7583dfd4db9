"""Private implementation of varprop. Import from :mod:`varprop` instead."""
