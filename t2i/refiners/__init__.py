"""refiners"""
