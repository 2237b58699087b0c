<?php
// A front controller in the shape of WordPress and Laravel: every pretty URL lands here
// and is routed on REQUEST_URI.
header('Content-Type: text/plain');
echo "front uri=" . $_SERVER['REQUEST_URI'] . " args=" . $_SERVER['QUERY_STRING'] . " script=" . $_SERVER['SCRIPT_NAME'] . "\n";
