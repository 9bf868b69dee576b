"""Tests of the SIP message layer (sbc/teams_sbc/sip)."""
