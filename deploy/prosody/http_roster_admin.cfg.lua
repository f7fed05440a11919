-- http-roster-admin: what Prosody needs so that the component owns every user's roster.
-- Works unchanged on Prosody 0.12.3 (Debian 12) and 13.0.1 (Debian 13 / bookworm-backports).
--
-- Install:
--   1. apt install prosody-modules   (mod_privilege, mod_delegation and mod_firewall)
--   2. Copy this file to /etc/prosody/conf.d/http_roster_admin.cfg.lua (Debian's prosody.cfg.lua
--      ends with Include "conf.d/*.cfg.lua"; otherwise add an Include line for it at the END of
--      prosody.cfg.lua, after your own VirtualHost).
--   3. Copy block_subscriptions.pfw (and, for the non-delegated mode, block_roster_sets.pfw)
--      to /etc/prosody/http_roster_admin/, and mod_roster_admin_presence.lua to
--      /usr/local/lib/prosody/modules/ (Debian's prosody.cfg.lua lists that directory in
--      plugin_paths; if yours does not, copy the module to a directory that it lists).
--   4. Replace every "example.org" below with your XMPP domain and "roster.example.org" with
--      the component's domain, set component_secret to a long random string (the same as in
--      the component's own configuration), then restart Prosody.
--
-- Two modes (pick one; the component must be configured for the same mode):
--   * Delegated (default, recommended): the server forwards users' own roster requests
--     (XEP-0355 namespace delegation) to the component, which answers GETs from the web app's
--     truth and refuses SETs.
--   * Non-delegated: Prosody answers roster GETs from its own storage, which the component
--     keeps in line with the web app through privileged roster SETs (XEP-0356); users' own
--     roster SETs are refused by block_roster_sets.pfw. To use it, delete the "delegations"
--     line and enable block_roster_sets.pfw (both marked below).
--
-- Reopening a VirtualHost that is already defined elsewhere is fine in Prosody: the options
-- below are added to it. But if your VirtualHost already sets its own modules_enabled, merge
-- the list below into it instead (the later definition would replace the earlier one). The
-- modules may equally be listed in the global modules_enabled; on a VirtualHost they are
-- added to the global ones.

VirtualHost "example.org"
    modules_enabled = {
        "privilege";  -- XEP-0356: the component reads/writes rosters, sees presence
        "delegation"; -- XEP-0355: users' roster requests go to the component
        "firewall";   -- blocks subscription stanzas (and, non-delegated, users' roster SETs)
        -- mod_roster_admin_presence.lua: roster reads and writes a user at a time, presence
        -- between contacts the component adds/removes, pending requests, delegated pushes,
        -- and roster GETs held until the component has synced the user (then answered here)
        "roster_admin_presence";
    }

    -- block_subscriptions.pfw: subscription stanzas sent by this host's users, and those
    -- sent to them from anywhere, other servers included, change no roster.
    -- block_roster_sets.pfw: users' own roster SETs are refused.
    firewall_scripts = {
        "/etc/prosody/http_roster_admin/block_subscriptions.pfw";
        -- NON-DELEGATED MODE ONLY: uncomment the next line.
        -- "/etc/prosody/http_roster_admin/block_roster_sets.pfw";
    }

    privileged_entities = {
        ["roster.example.org"] = {
            roster = "both";      -- read and write every user's roster
            message = "outgoing"; -- send messages on behalf of the server
            presence = "roster";  -- receive every user's available/unavailable presence
            -- Send IQs on behalf of users; the component uses it to push roster changes to
            -- clients (under delegation Prosody sends no pushes itself). Grant exactly ONE
            -- namespace here: 0.12 mis-nests the advertisement when there are several.
            iq = { ["jabber:iq:roster"] = "both" };
        };
    }

    -- DELEGATED MODE. For the non-delegated mode delete this line (and see firewall_scripts).
    delegations = { ["jabber:iq:roster"] = { jid = "roster.example.org" } }

Component "roster.example.org"
    component_secret = "change-me-to-a-long-random-secret"
    -- Components load neither the global nor the VirtualHost modules: list both here too.
    modules_enabled = { "privilege"; "delegation" }

-- Notes
--  * Large rosters: a user's whole roster travels from the component in one stanza, and
--    Prosody closes a component's stream over a stanza larger than component_stanza_size_limit
--    (default 512 KiB, roughly 1,500 contacts). The component refuses to send more than its
--    server.max_stanza_bytes (default 500000). To allow bigger rosters, raise both together;
--    Prosody wants this option in the GLOBAL section of prosody.cfg.lua (above any VirtualHost),
--    e.g.  component_stanza_size_limit = 10 * 1024 * 1024
--  * The component connects to Prosody's component port (component_ports, default 5347, bound
--    to component_interfaces, default loopback) with the secret above.
--  * Prosody 13: "prosodyctl check config" reports mod_posix as deprecated when the global
--    modules_enabled still lists "posix" (Debian 12's default config does). It is an empty
--    module on 13: harmless, and can be removed after the upgrade.
--  * No subscription stanza changes a roster, whoever sends it: users' clients get all four
--    types refused with not-allowed; from anyone else (other servers included) a subscribe
--    is refused and subscribed/unsubscribe/unsubscribed are dropped (block_subscriptions.pfw
--    says why). A contact on another server keeps the subscription its own server recorded:
--    it receives our users' presence (their rosters here say "both"), but sends its own
--    only if its server's roster lets it.
