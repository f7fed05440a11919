-- TEST-ONLY (loaded by tests/harness/prosody.py, never shipped): outgoing server-to-server
-- connections to the domains listed in a routes file go to 127.0.0.1:<port> instead of being
-- looked up in DNS, so that two test servers with made-up domains can federate on loopback.
--
-- Option: test_s2s_routes_file = "<path>", a text file of "<domain> <port>" lines. It is read
-- at every new outgoing connection, so routes can be added while the server runs.
--
-- mod_s2s builds its connection target with net.resolvers.service.new() when it opens a new
-- outgoing session. Prosody 13 could swap that resolver in its s2sout-pre-connect event, but
-- 0.12 has no such event; replacing new() in the shared resolver module works on both.
module:set_global();

local service = require "net.resolvers.service";
local basic = require "net.resolvers.basic";

local routes_file = module:get_option_string("test_s2s_routes_file");

local function loopback_port(domain)
	local file = routes_file and io.open(routes_file);
	if not file then return nil; end
	local port;
	for line in file:lines() do
		local name, number = line:match("^(%S+)%s+(%d+)%s*$");
		if name == domain then
			port = tonumber(number);
			break;
		end
	end
	file:close();
	return port;
end

local dns_new = service.new;

function service.new(hostname, service_name, conn_type, extra)
	local port = loopback_port(hostname);
	if not port then
		return dns_new(hostname, service_name, conn_type, extra);
	end
	module:log("debug", "Connecting to %s at 127.0.0.1:%d", hostname, port);
	return basic.new("127.0.0.1", port, conn_type, extra);
end

function module.unload()
	service.new = dns_new;
end
